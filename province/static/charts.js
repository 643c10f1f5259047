/* The platform's charts (ECharts, served from /static: no CDN). The CSP forbids inline scripts, so a
 * page puts each chart's data in a <script type="application/json"> block and marks the chart's box
 * with data-chart (its kind) and data-source (the id of that block); this file draws them. */
(function () {
  "use strict";

  function readData(el) {
    var src = document.getElementById(el.getAttribute("data-source"));
    return src ? JSON.parse(src.textContent) : null;
  }

  // Ratings and dissatisfied as bars (left axis, counts), satisfaction and participation as lines (right
  // axis, %). A bucket without ratings has no rate: null, drawn as a gap, never joined across.
  function trend(el, d) {
    return {
      animation: false,
      tooltip: { trigger: "axis" },
      legend: { top: 0 },
      grid: { left: 50, right: 60, top: 40, bottom: 60 },
      xAxis: { type: "category", data: d.labels },
      yAxis: [
        { type: "value", name: "评价数 Ratings", minInterval: 1 },
        { type: "value", name: "% ", min: 0, max: 100 }
      ],
      dataZoom: d.labels.length > 45 ? [{ type: "slider" }] : [],
      series: [
        { name: "评价数 Ratings", type: "bar", data: d.ratings },
        { name: "不满意 Dissatisfied", type: "bar", data: d.dissatisfied },
        { name: "满意率 Satisfaction %", type: "line", yAxisIndex: 1, data: d.satisfaction,
          connectNulls: false, showSymbol: true },
        { name: "参评率 Participation %", type: "line", yAxisIndex: 1, data: d.participation,
          connectNulls: false, showSymbol: true }
      ]
    };
  }

  var KINDS = { trend: trend };

  function draw() {
    if (typeof echarts === "undefined") {
      return;
    }
    var boxes = document.querySelectorAll("[data-chart]");
    for (var i = 0; i < boxes.length; i++) {
      var el = boxes[i];
      var kind = KINDS[el.getAttribute("data-chart")];
      var data = readData(el);
      if (!kind || !data) {
        continue;
      }
      // A box without a height in the style sheet still gets one (set from script: the CSP allows no
      // style attribute in the page).
      if (!el.clientHeight) {
        el.style.height = "360px";
      }
      var chart = echarts.getInstanceByDom(el) || echarts.init(el, null, { renderer: "canvas" });
      chart.setOption(kind(el, data), true);
      el.setAttribute("data-drawn", "1");
    }
  }

  window.addEventListener("resize", function () {
    var boxes = document.querySelectorAll("[data-chart]");
    for (var i = 0; i < boxes.length; i++) {
      var c = typeof echarts !== "undefined" && echarts.getInstanceByDom(boxes[i]);
      if (c) {
        c.resize();
      }
    }
  });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();

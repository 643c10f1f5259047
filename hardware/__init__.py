"""Data of the ``countersign`` package: the keypads' pin maps (``*/pins.json``) and the stock MicroPython
images' pin tables, read by the bundle builder and the pin checks. CPython imports nothing here."""

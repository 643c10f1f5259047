# SSD1306 128 x 64 OLED on I2C: just what the keypad's screen needs (init, show), on MicroPython's
# framebuf (in every stock esp32 image), which does the drawing (fill, text).
#
# Shipped in the bundle of a board whose pin map has an OLED (common/bundle.py): stock images do not
# carry a display driver, and `mip install` needs a network a technician's bench may not have.
import framebuf

# Display off; horizontal addressing; start line 0; segment remap; multiplex 64; COM scan remapped;
# offset 0; COM pins for 128 x 64; clock; pre-charge (internal charge pump); VCOMH; contrast;
# display follows RAM; not inverted; charge pump on; display on. (SSD1306 datasheet, section 9.)
_INIT = b"\x00\xae\x20\x00\x40\xa1\xa8\x3f\xc8\xd3\x00\xda\x12\xd5\x80\xd9\xf1\xdb\x30\x81\x7f\xa4\xa6\x8d\x14\xaf"


class SSD1306_I2C(framebuf.FrameBuffer):
    def __init__(self, width, height, i2c, addr=0x3C):
        self._i2c = i2c
        self._addr = addr
        self._win = bytes((0x00, 0x21, 0, width - 1, 0x22, 0, height // 8 - 1))
        self._buf = bytearray(width * height // 8)
        super().__init__(self._buf, width, height, framebuf.MONO_VLSB)
        i2c.writeto(addr, _INIT)

    def show(self):
        # The whole frame in one transfer: window first (commands), then the data stream.
        self._i2c.writeto(self._addr, self._win)
        self._i2c.writevto(self._addr, (b"\x40", self._buf))

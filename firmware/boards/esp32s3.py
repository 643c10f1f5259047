# ESP32-S3 DevKitC-1 keypad board: the ESP32-C3 board code with other pin numbers, nothing else.
#
# PINS is the "pins" object of hardware/esp32s3-devkitc-1/pins.json, embedded as in esp32c3.py;
# tests/test_65_board_pins.py checks that they agree and that this module adds no code of its own.
from boards.esp32c3 import Board as _Esp32Board

PINS = {
    "key1": 4,
    "key2": 5,
    "key3": 6,
    "key4": 7,
    "key5": 15,
    "invite": 16,
    "sda": 8,
    "scl": 9,
    "buzzer": 10,
    "led": 17,
}


class Board(_Esp32Board):
    name = "esp32s3"
    PINS = PINS

# Countersign keypad application (MicroPython). See firmware/DESIGN.md.
VERSION = "0.1.0"

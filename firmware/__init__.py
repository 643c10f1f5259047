"""The keypad's MicroPython application, shipped as data of the ``countersign`` package.

CPython never imports these modules: ``countersign.common.bundle`` finds them with
``importlib.resources`` and compiles them for a keypad; the unix-port tests run them on MicroPython.
This file is not part of any bundle.
"""

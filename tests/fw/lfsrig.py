# Flash for firmware tests on littlefs (the keypad's filesystem), on the MicroPython unix port.
#
# Flash is MicroPython's block device protocol (readblocks / writeblocks with offsets / ioctl, as
# littlefs drives it; docs: "Block devices", extended interface) over NOR flash's rules: an erase sets a
# whole block to 0xFF, a program can only clear bits (what is written is ANDed into what is there), so
# a filesystem that programs without erasing first gets garbage here as it would on a keypad. The bytes
# live in RAM (RAMFlash) or in a host file (FileFlash), where every program or erase is written through
# in 256-byte pages (a NOR page): the unix port's files have no buffer of their own, so a SIGKILL
# between two pages leaves the image as a power cut leaves a keypad's flash, half-programmed write
# included. mount() formats a blank device and mounts it with vfs.VfsLfs2 as the esp32 port does.
#
# Counters for tests: erases (per block in `wear`), programs, and overwrites (bytes programmed over
# bytes that were not erased: littlefs should never do that).
import io
import os
import vfs

_PAGE = 256
_IOCTL_COUNT = 4
_IOCTL_SIZE = 5
_IOCTL_ERASE = 6


class Flash:
    def __init__(self, count, size):
        self.count = count
        self.size = size
        self.erases = 0
        self.programs = 0
        self.overwrites = 0
        self.wear = bytearray(count)        # erases per block (saturates at 255)
        self._ff = b"\xff" * _PAGE

    # -- the block device protocol --
    def readblocks(self, block, buf, off=0):
        self._read(block * self.size + off, buf)

    def writeblocks(self, block, buf, off=None):
        if off is None:                     # the simple interface: a whole block, erased first
            self.ioctl(_IOCTL_ERASE, block)
            off = 0
        self.programs += 1
        a = block * self.size + off
        mv = memoryview(buf)
        for p in range(0, len(buf), _PAGE):
            self._program(a + p, mv[p:p + _PAGE])

    def ioctl(self, op, arg):
        if op == _IOCTL_COUNT:
            return self.count
        if op == _IOCTL_SIZE:
            return self.size
        if op == _IOCTL_ERASE:
            self.erases += 1
            if self.wear[arg] < 255:
                self.wear[arg] += 1
            a = arg * self.size
            for p in range(0, self.size, _PAGE):
                self._put(a + p, self._ff)
            return 0
        return 0

    # -- NOR programming --
    def _program(self, a, data):
        old = bytearray(len(data))
        self._read(a, old)
        if old != self._ff[:len(data)]:
            for i in range(len(data)):
                if old[i] != 0xFF and old[i] & data[i] != data[i]:
                    self.overwrites += 1
                old[i] &= data[i]
            data = old
        self._put(a, data)


class RAMFlash(Flash):
    # In an io.BytesIO: reading it (seek + readinto) allocates nothing, so heap_lock() tests run on it.
    def __init__(self, count=512, size=4096):
        super().__init__(count, size)
        self._io = io.BytesIO()
        for _ in range(count * size // _PAGE):
            self._io.write(self._ff)

    def _read(self, a, buf):
        self._io.seek(a)
        self._io.readinto(buf)

    def _put(self, a, data):
        self._io.seek(a)
        self._io.write(data)


class FileFlash(Flash):
    # The image file survives the process: the next boot mounts what the last one left.
    def __init__(self, path, count=512, size=4096):
        super().__init__(count, size)
        try:
            os.stat(path)
        except OSError:
            with open(path, "wb") as f:
                for _ in range(count * size // _PAGE):
                    f.write(self._ff)
        self._f = open(path, "r+b")

    def _read(self, a, buf):
        self._f.seek(a)
        self._f.readinto(buf)

    def _put(self, a, data):
        self._f.seek(a)
        self._f.write(data)     # no buffer in between: on the host's page cache once this returns


def mount(dev, at="/flash"):
    """Mount `dev` with littlefs at `at` (formatting it first if it holds no filesystem); returns `at`."""
    try:
        fs = vfs.VfsLfs2(dev)
    except OSError:
        vfs.VfsLfs2.mkfs(dev)
        fs = vfs.VfsLfs2(dev)
    vfs.mount(fs, at)
    return at


dev = None     # the flash setup() mounted, for its counters


def setup(spec, host_dir):
    """Where a test script keeps its files, from its command-line argument: "host" (the host folder
    `host_dir`), "lfs" (littlefs on a 4 MB RAM flash), "lfsfile" (on a 4 MB image, host_dir/flash.img)."""
    global dev
    if spec == "host":
        return host_dir
    dev = RAMFlash(1024) if spec == "lfs" else FileFlash(host_dir + "/flash.img", 1024)
    return mount(dev)

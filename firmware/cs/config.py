# Device configuration and key, on the device filesystem, as provisioning writes them.
#
# config.json: {"device_id", "epoch", "hall", "window", "scale", "invite_key", "invite_timeout",
#               "broker_host", "broker_port", "heartbeat_s", "wifi_ssid", "wifi_password", "sim_port",
#               "capacity"}
# device.key:  the 32-byte device key, raw.
# Provisioning writes device.key first and config.json last (new-then-rename), so a device whose
# provisioning was interrupted has no config.json and stays unprovisioned, never half-provisioned.
import json
import os

CONFIG = "config.json"
KEY = "device.key"

_DEFAULTS = {
    "epoch": 1,
    "scale": 4,
    "invite_key": True,
    "invite_timeout": 20,
    "broker_port": 1883,
    "heartbeat_s": 60,
    "capacity": 9000,
    "hall": "",
    "window": "",
}


class Config:
    def __init__(self, d, key):
        self._names = []
        for src in (_DEFAULTS, d):
            for k, v in src.items():
                setattr(self, k, v)
                if k not in self._names:
                    self._names.append(k)
        self.key = key

    def public(self):
        """Everything but secrets, for the console and `countersign device inspect`."""
        d = {}
        for k in self._names:
            if k != "wifi_password":
                d[k] = getattr(self, k)
        return d


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def load(folder=""):
    """The Config, or None when the device is not provisioned. Raises ValueError for a broken one."""
    cpath = folder + CONFIG
    kpath = folder + KEY
    if not _exists(cpath):
        return None
    with open(cpath) as f:
        d = json.load(f)
    with open(kpath, "rb") as f:
        key = f.read()
    if len(key) != 32:
        raise ValueError("bad-key")
    dev = d.get("device_id")
    if not isinstance(dev, str) or not 1 <= len(dev) <= 16:
        raise ValueError("bad-device-id")
    if d.get("scale", 4) not in (4, 5):
        raise ValueError("bad-scale")
    if "broker_host" not in d:
        raise ValueError("no-broker")
    return Config(d, key)

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


class Config:
    """The config's values as attributes (cfg.device_id), read from the loaded dict itself: no copy
    of it in an instance dict. Unknown names raise AttributeError (getattr(cfg, name, default))."""

    def __init__(self, d, key):
        self._d = d
        self.key = key

    def __getattr__(self, name):
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(name)

    def public(self):
        """Everything but secrets, for the console and `countersign device inspect`."""
        d = dict(self._d)
        d.pop("wifi_password", None)
        return d


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _ipv4(host):
    if not isinstance(host, str):
        return False
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p.isdigit() or len(p) > 3 or int(p) > 255:
            return False
    return True


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
    if not _ipv4(d.get("broker_host")):
        # An address, not a name: asyncio.open_connection resolves names with a blocking call, which
        # would stop the key scan (and starve the watchdog) whenever the hall's DNS is slow or down.
        raise ValueError("broker-not-an-ip-address")
    # Defaults in code, not in a module-level dict (code stays in flash, a dict would be heap).
    d.setdefault("epoch", 1)
    d.setdefault("scale", 4)
    d.setdefault("invite_key", True)
    d.setdefault("invite_timeout", 20)
    d.setdefault("broker_port", 1883)
    d.setdefault("heartbeat_s", 60)
    d.setdefault("capacity", 9000)
    d.setdefault("hall", "")
    d.setdefault("window", "")
    return Config(d, key)

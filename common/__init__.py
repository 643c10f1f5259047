"""Plumbing every role may use: the MQTT client factory, SQLite opening, the mosquitto config writer,
the keypad's outbox record format and the firmware bundle builder.

Imports flow one way: ``protocol`` <- ``common`` <- the roles (``gateway``, ``province``, ``device``)
<- ``sim``. Nothing here imports a role or the simulator (checked by ``make lint``: import-linter).
"""

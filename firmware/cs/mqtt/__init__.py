# Non-blocking MQTT 3.1.1 client: pkt (encoders + bounded parser), client (the session). See DESIGN.md.

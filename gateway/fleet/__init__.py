"""A fleet: one hub holds the partner's credentials and Spark's webhook; many sites connect
out to it through an MQTT broker. See docs/fleet.md."""

"""The swarm layer: DHT, signed records, wire format, announcements, epoch records."""

"""Backends: memory (in-process), nats (JetStream via nats-py), kafka (aiokafka)."""

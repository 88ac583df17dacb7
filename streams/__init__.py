"""Call recordings in, transcript events out, over Kafka."""

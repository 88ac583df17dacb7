"""JSON Schemas of the topic contracts, shipped as package data."""

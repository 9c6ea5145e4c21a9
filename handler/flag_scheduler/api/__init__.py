"""The HTTP API's front door: API Gateway HTTP API events in, JSON and problem documents out."""

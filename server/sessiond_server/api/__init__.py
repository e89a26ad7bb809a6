"""The gRPC layer: validation, authorisation and error mapping; no SQL here."""

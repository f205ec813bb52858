"""The persistent tier: schema, portable column types and engines."""

"""Pure domain: models, enums, transition tables, validation, backoff. Imports nothing of creep's outer layers."""

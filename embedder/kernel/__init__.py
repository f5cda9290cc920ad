"""The kernel every layer of ``embedder`` shares: errors, atomic writes, destinations, versions, lazy names,
option fields, the settings a vector depends on (with its preprocessing) and the engine folder's store. It imports nothing above it."""

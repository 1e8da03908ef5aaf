"""Turn one build into a release: `version` reads git, `options` checks the flags,
`run` drives the steps (`steps` are the real ones), `provenance`, `sbom` and
`signing` attach evidence, `summary` records what was published.
"""

"""Build, push, index and verify the per-architecture plugin images.

`tags` names them, `runtime` makes the dependency layer, `context` stages the wheel,
`buildx` builds one architecture, `registry` talks to any registry, `record` keeps
what a build did, `build` runs it all, `verify` runs the testinfra suite, `summary`
prints the table.
"""

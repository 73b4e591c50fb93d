"""The front door: the command line (`stages.cli`), `run all` (`stages.run_all`), the web app
and one thin module per stage on top of every other layer.

A stage's module here turns arguments into one typed, fully resolved options object (paths
checked, configs loaded, a `core.devices.Precision` rather than a string) and calls one library
function with it; nothing below this layer parses arguments. The command line, `run all` and
the app build the same options object and call the same function. Each module provides
`add_arguments(parser)`, `options(args)` (UserError on bad input, before any work), `run(options)`
and `main(args) -> int` (`run(options(args))` and its printed summary).
"""

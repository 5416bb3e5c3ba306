"""Configuration: :func:`edged.config.loader.load_config` returns a validated
:class:`edged.config.schema.Config` or raises :class:`edged.config.yamlsrc.ConfigError` listing
every problem as ``file:line: key: message``. (Kept empty so that the model manifest can use
the YAML helpers without importing the daemon's config schema.)"""

from ttcjax.version import __version__

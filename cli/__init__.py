"""The ``spect`` command-line tool (a thin layer over `spectproj` and `recon`)."""

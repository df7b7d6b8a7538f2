"""One script per paper table/figure: ``python -m analysis.<script>`` from the repository root, or
``python analysis/<script>.py`` from anywhere (``analysis/_bootstrap.py``)."""

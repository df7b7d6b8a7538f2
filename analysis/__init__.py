"""One script per paper table/figure; run them as ``python -m analysis.<script>`` from the repository root."""

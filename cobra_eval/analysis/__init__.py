"""Analysing stored results: read-only SQL, exports, method comparison, the HTML report."""

"""pih2t-bench: export to every format, verify each, time each, and report side-by-side ratios."""

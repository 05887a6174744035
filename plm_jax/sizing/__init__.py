"""What a run costs before it runs: `plan` (memory per chip, estimated from traced
residuals and checked by the compiler), `bench` (steps timed, or compiled only for a
TPU topology: aot.py), and a config sized to a parameter count (param_match.py)."""

"""Local emulators of the vendor APIs and a synthetic product world, for the demo and tests.

Production code never imports this package.
"""

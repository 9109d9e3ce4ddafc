from bench.cli import main

if __name__ == "__main__":  # spawned bench processes import this module too
    raise SystemExit(main())

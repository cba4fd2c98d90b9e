from benchmarks.early_stopping.run import main

raise SystemExit(main())

from lazymoe.cli import main

raise SystemExit(main())

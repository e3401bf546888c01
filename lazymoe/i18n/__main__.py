from lazymoe.i18n.cli import main

raise SystemExit(main())

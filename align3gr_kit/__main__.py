from align3gr_kit.cli import main

raise SystemExit(main())

from dscoder.cli import main

raise SystemExit(main())

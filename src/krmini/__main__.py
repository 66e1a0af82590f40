from krmini.cli import main

raise SystemExit(main())

from arc_actors.cli import main

raise SystemExit(main())

from vqbench.cli import main

raise SystemExit(main())

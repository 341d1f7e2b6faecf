from regbench.report import main

main()

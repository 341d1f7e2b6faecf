from regbench.train import main

main()

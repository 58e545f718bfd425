from sb3_mpo.zoo.cli import main

if __name__ == "__main__":
    main(prog="python -m sb3_mpo.zoo")

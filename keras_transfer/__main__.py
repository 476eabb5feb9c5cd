"""`python -m keras_transfer` is the `keras-transfer` command."""

from keras_transfer.apps.command import main

if __name__ == "__main__":
    main()

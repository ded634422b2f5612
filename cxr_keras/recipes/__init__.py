"""One module per paper, each runnable end to end: ``fzlpr``, ``multiloss``, ``mlrfnet``,
``dual_mae``, ``mtpret`` (``cxr-keras run PAPER``), with the paper's reported numbers in
``<paper>_paper``. Import the one you need (``from cxr_keras.recipes import fzlpr``): importing
this package loads none of them."""

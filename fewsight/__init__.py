"""fewsight: few-shot visual recognition by meta-learning."""

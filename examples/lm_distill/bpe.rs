//! A byte-pair-encoding tokenizer (Sennrich et al. 2016, as GPT-2's: a word's
//! space belongs to its first piece) learned from the training split: the
//! student's tokenizer in the cross-tokenizer rows, whose teacher reads whole
//! words.
//!
//! It is learned over the words of the word-level vocabulary, each weighted by
//! its count in the training split (the words outside it are the text
//! `<unk>`, as the teacher reads them), so every text the example makes has
//! its pieces here, and each word's pieces are kept rather than re-derived.

use std::collections::HashMap;

use crate::data::{BOS, EOS, PAD, UNK, Vocab};

/// The pieces, and each word's pieces by its word-level id.
pub struct Bpe {
    pieces: Vec<String>,
    /// By word id: the word's pieces, the first with the space before it.
    words: Vec<Vec<usize>>,
}

/// The text a word-level token stands for, with the space before it (`None`
/// for `<pad>`, `<s>`, `</s>`, which are no word).
pub fn word_text(vocab: &Vocab, id: usize) -> Option<String> {
    match id {
        PAD | BOS | EOS => None,
        _ => Some(format!(" {}", vocab.word(id))),
    }
}

impl Bpe {
    /// Merges the most frequent adjacent pair (ties: the smaller ids) until
    /// there are `size` pieces or no pair occurs twice. `counts[id]`: how
    /// often word `id` occurs in the training split. The reserved ids are
    /// the word-level vocabulary's, `</s>` the text `"\n"`.
    pub fn learn(vocab: &Vocab, counts: &[usize], size: usize) -> Self {
        let mut pieces: Vec<String> = ["<pad>", "<unk-char>", "<s>", "\n"]
            .map(String::from)
            .to_vec();
        debug_assert_eq!(
            (PAD, UNK, BOS, EOS),
            (0, 1, 2, 3),
            "the reserved ids are shared"
        );
        let mut ids: HashMap<String, usize> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        let mut intern = |piece: String, pieces: &mut Vec<String>| -> usize {
            *ids.entry(piece.clone()).or_insert_with(|| {
                pieces.push(piece);
                pieces.len() - 1
            })
        };
        // The alphabet: a word's first character with its space, the others
        // alone.
        let mut words: Vec<Vec<usize>> = Vec::with_capacity(vocab.len());
        for id in 0..vocab.len() {
            let Some(text) = word_text(vocab, id) else {
                words.push(Vec::new());
                continue;
            };
            let mut chars = text.chars().skip(1);
            let first = chars.next().expect("a word has a character");
            let mut symbols = vec![intern(format!(" {first}"), &mut pieces)];
            symbols.extend(chars.map(|c| intern(c.to_string(), &mut pieces)));
            words.push(symbols);
        }
        while pieces.len() < size {
            let mut pairs: HashMap<(usize, usize), usize> = HashMap::new();
            for (symbols, &count) in words.iter().zip(counts) {
                for pair in symbols.windows(2) {
                    *pairs.entry((pair[0], pair[1])).or_default() += count;
                }
            }
            let Some(((a, b), count)) = pairs
                .into_iter()
                .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
            else {
                break;
            };
            if count < 2 {
                break;
            }
            let merged = pieces.len();
            pieces.push(format!("{}{}", pieces[a], pieces[b]));
            for symbols in &mut words {
                let mut i = 0;
                while i + 1 < symbols.len() {
                    if symbols[i] == a && symbols[i + 1] == b {
                        symbols[i] = merged;
                        symbols.remove(i + 1);
                    }
                    i += 1;
                }
            }
        }
        Self { pieces, words }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// The pieces of the word-level token `id` (empty for a reserved one).
    pub fn pieces_of(&self, id: usize) -> &[usize] {
        &self.words[id]
    }

    /// A piece's text (its UTF-8 bytes are the bytes it covers).
    pub fn piece(&self, id: usize) -> &str {
        &self.pieces[id]
    }

    /// `(piece text, id)`: the vocabulary, as a tokenizer's `get_vocab()`.
    pub fn vocabulary(&self) -> impl Iterator<Item = (&str, usize)> {
        self.pieces.iter().enumerate().map(|(i, p)| (p.as_str(), i))
    }
}

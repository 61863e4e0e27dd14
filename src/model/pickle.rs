//! Tensors of a state dict saved by Python's `torch.save` (its zip format: `*/data.pkl` plus
//! one stored entry per storage under `*/data/`), for BGE-M3's `sparse_linear.pt`.
//!
//! tch reads TorchScript archives only, and libtorch's own unpickler (`torch::pickle_load`)
//! rejects `collections.OrderedDict` state dicts. This reads the pickle opcodes such files use
//! (protocol 2–4) and builds only tensors, dicts, tuples, lists and scalars: the two globals
//! it resolves are `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` and
//! `collections.OrderedDict`, so a crafted file cannot run anything; any other global is
//! refused naming the file.

use std::collections::HashMap;
use std::path::Path;

use tch::{Kind, Tensor};

use super::ModelError;

/// A pickled value (tensors by their index in the reader's table).
#[derive(Clone, Debug)]
enum Value {
    Mark,
    /// `None`, booleans and floats: read, never needed.
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Storage {
        key: String,
        kind: Kind,
    },
    Tensor(usize),
}

/// The named tensors of the state dict in `path`, in file order; an error naming the file,
/// what is wrong, and `convert` (what to do) when it cannot be read.
pub fn read_state_dict(path: &Path, convert: &str) -> Result<Vec<(String, Tensor)>, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(&bytes).map_err(|detail| ModelError::Unsupported {
        path: path.to_path_buf(),
        what: format!("this PyTorch file ({detail})"),
        hint: convert.to_string(),
    })
}

fn parse(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let entries = zip_entries(bytes)?;
    let (pkl_name, pkl) = entries
        .iter()
        .find(|(name, _)| name.ends_with("data.pkl"))
        .ok_or("no data.pkl: not a torch.save zip archive")?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let mut reader = Unpickler {
        data: pkl,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        tensors: Vec::new(),
    };
    let top = reader.run(|key| {
        entries
            .iter()
            .find(|(n, _)| *n == format!("{prefix}data/{key}"))
            .map(|(_, d)| *d)
    })?;
    let Value::Dict(items) = top else {
        return Err("the file does not hold a dict of tensors (a state dict)".into());
    };
    let mut tensors: Vec<Option<Tensor>> = reader.tensors.into_iter().map(Some).collect();
    items
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(i)) => tensors[i]
                .take()
                .map(|t| (k, t))
                .ok_or_else(|| "a tensor appears twice".to_string()),
            _ => Err("an entry of the dict is not a named tensor".into()),
        })
        .collect()
}

/// `(name, data)` of every entry of a zip archive stored without compression (as torch.save
/// writes them), from its central directory.
fn zip_entries(b: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let u16_at = |i: usize| {
        b.get(i..i + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let bad = || "not a zip archive (torch.save's format since PyTorch 1.6)".to_string();
    let eocd = (0..b.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(i) == Some(0x0605_4b50))
        .ok_or_else(bad)?;
    let count = u16_at(eocd + 10).ok_or_else(bad)?;
    let mut at = u32_at(eocd + 16).ok_or_else(bad)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(at) != Some(0x0201_4b50) {
            return Err(bad());
        }
        let field = |o: usize| u16_at(at + o).ok_or_else(bad);
        let (method, name_len) = (field(10)?, field(28)?);
        let (extra_len, comment_len) = (field(30)?, field(32)?);
        let size = u32_at(at + 20).ok_or_else(bad)?;
        let local = u32_at(at + 42).ok_or_else(bad)?;
        let name = b.get(at + 46..at + 46 + name_len).ok_or_else(bad)?;
        let name = String::from_utf8_lossy(name).into_owned();
        if method != 0 || size == 0xFFFF_FFFF {
            return Err(format!("entry {name} is compressed or zip64"));
        }
        let data_at = local
            + 30
            + u16_at(local + 26).ok_or_else(bad)?
            + u16_at(local + 28).ok_or_else(bad)?;
        out.push((name, b.get(data_at..data_at + size).ok_or_else(bad)?));
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<usize, Value>,
    tensors: Vec<Tensor>,
}

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or("data.pkl ends early")?;
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<usize, String> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0usize, |acc, &x| acc << 8 | x as usize))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("data.pkl ends early")?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("no MARK")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Runs the pickle to STOP; `storage(key)` gives the bytes of a storage entry.
    fn run(&mut self, storage: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Value, String> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => self.pos += 1, // PROTO
                0x95 => self.pos += 8, // FRAME
                b'c' => {
                    let g = format!("{}.{}", self.line()?, self.line()?);
                    self.stack.push(Value::Global(g));
                }
                0x93 => match (self.pop()?, self.pop()?) {
                    (Value::Str(name), Value::Str(module)) => {
                        self.stack.push(Value::Global(format!("{module}.{name}")))
                    }
                    _ => return Err("bad STACK_GLOBAL".into()),
                },
                b'q' | b'r' => {
                    let i = self.uint(if op == b'q' { 1 } else { 4 })?;
                    let top = self.stack.last().cloned().ok_or("empty stack")?;
                    self.memo.insert(i, top);
                }
                0x94 => {
                    let top = self.stack.last().cloned().ok_or("empty stack")?;
                    self.memo.insert(self.memo.len(), top);
                }
                b'h' | b'j' => {
                    let i = self.uint(if op == b'h' { 1 } else { 4 })?;
                    let v = self.memo.get(&i).cloned().ok_or("unknown memo entry")?;
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b']' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b'X' | 0x8c => {
                    let n = self.uint(if op == b'X' { 4 } else { 1 })?;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s));
                }
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.stack.push(Value::Int(v));
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.stack.push(Value::Int(v));
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.stack.push(Value::Int(v));
                }
                0x8a => {
                    let n = self.uint(1)?;
                    let raw = self.take(n)?;
                    let mut v = raw.iter().rev().fold(0i64, |acc, &x| acc << 8 | x as i64);
                    if n > 0 && n < 8 && raw[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Scalar);
                }
                b'N' | 0x88 | 0x89 => self.stack.push(Value::Scalar),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self
                        .stack
                        .len()
                        .checked_sub(n)
                        .ok_or("pickle stack underflow")?;
                    let items = self.stack.split_off(at);
                    self.stack.push(Value::Tuple(items));
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    self.insert(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.insert(items)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    match self.stack.last_mut() {
                        Some(Value::Tuple(list)) => list.extend(items),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent(pid)?);
                }
                b'R' => {
                    let (args, callable) = (self.pop()?, self.pop()?);
                    let v = self.reduce(callable, args, &storage)?;
                    self.stack.push(v);
                }
                // BUILD: object state (a state dict's `_metadata`) is not needed.
                b'b' => {
                    self.pop()?;
                }
                b'.' => return self.pop(),
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }

    fn insert(&mut self, items: Vec<Value>) -> Result<(), String> {
        let Some(Value::Dict(map)) = self.stack.last_mut() else {
            return Err("SETITEM on a non-dict".into());
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            map.push((k, v));
        }
        Ok(())
    }

    fn reduce(
        &mut self,
        callable: Value,
        args: Value,
        storage: &impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Value, String> {
        let Value::Global(name) = callable else {
            return Err("REDUCE of a non-global".into());
        };
        let Value::Tuple(args) = args else {
            return Err(format!("{name}: arguments are not a tuple"));
        };
        match name.as_str() {
            "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
            "torch._utils._rebuild_parameter" => args.into_iter().next().ok_or("no tensor".into()),
            "torch._utils._rebuild_tensor_v2" => {
                let ints = |v: Option<&Value>| -> Result<Vec<i64>, String> {
                    match v {
                        Some(Value::Tuple(items)) => items
                            .iter()
                            .map(|x| match x {
                                Value::Int(i) => Ok(*i),
                                _ => Err("a size is not an integer".to_string()),
                            })
                            .collect(),
                        _ => Err("no size".into()),
                    }
                };
                let (Some(Value::Storage { key, kind }), Some(Value::Int(offset))) =
                    (args.first(), args.get(1))
                else {
                    return Err("a tensor without its storage".into());
                };
                let (size, stride) = (ints(args.get(2))?, ints(args.get(3))?);
                let data = storage(key).ok_or_else(|| format!("storage {key} is missing"))?;
                let elements = (data.len() / kind.elt_size_in_bytes()) as i64;
                let tensor = Tensor::f_from_data_size(data, &[elements], *kind)
                    .and_then(|t| t.f_as_strided(size.as_slice(), stride.as_slice(), *offset))
                    .and_then(|t| t.f_contiguous())
                    .map_err(|e| format!("tensor over storage {key}: {e}"))?;
                self.tensors.push(tensor);
                Ok(Value::Tensor(self.tensors.len() - 1))
            }
            other => Err(format!(
                "refusing to call `{other}`: not a plain state dict"
            )),
        }
    }
}

/// A `('storage', torch.XStorage, key, location, numel)` persistent id.
fn persistent(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("bad persistent id".into());
    };
    let (Some(Value::Global(class)), Some(Value::Str(key))) = (items.get(1), items.get(2)) else {
        return Err("bad persistent id".into());
    };
    let kind = match class.rsplit('.').next().unwrap_or("") {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        other => return Err(format!("storage type `{other}`")),
    };
    Ok(Value::Storage {
        key: key.clone(),
        kind,
    })
}

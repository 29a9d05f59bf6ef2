//! Binding a checked call's arguments into the typed values built-ins take. The checker
//! has already refused wrong types and missing arguments, so a [`BindError`] means the
//! checker and a built-in disagree; it is still an error value, never a panic.

use std::collections::BTreeMap;

use crate::hooks::HookRef;
use crate::plan::{Call, ColumnType, Value};

/// A table's columns, in order, with their types.
pub type Columns = Vec<(String, ColumnType)>;

/// Builds [`Columns`] from a list of names and types.
pub fn columns(list: &[(&str, ColumnType)]) -> Columns {
    list.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
}

#[derive(Debug, thiserror::Error)]
#[error(
    "`{function}`: argument `{argument}` {problem} (the checker should have refused this; please report it)"
)]
pub struct BindError {
    pub function: String,
    pub argument: String,
    pub problem: String,
}

/// A string given in the source, or computed by a `let` at run time (`row(...)`).
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    Given(String),
    Computed(String),
}

impl Text {
    pub fn resolve(&self, values: &BTreeMap<String, Value>) -> Result<String, String> {
        match self {
            Text::Given(text) => Ok(text.clone()),
            Text::Computed(name) => match values.get(name) {
                Some(Value::Str(text)) => Ok(text.clone()),
                _ => Err(format!("`{name}` has no text value")),
            },
        }
    }
}

/// A head given as `L1H4`, or computed at run time (`best_head(...)`).
#[derive(Debug, Clone, PartialEq)]
pub enum HeadArg {
    Given { layer: usize, head: usize },
    Computed(String),
}

impl HeadArg {
    pub fn resolve(&self, values: &BTreeMap<String, Value>) -> Result<(usize, usize), String> {
        match self {
            HeadArg::Given { layer, head } => Ok((*layer, *head)),
            HeadArg::Computed(name) => match values.get(name) {
                Some(Value::Head { layer, head }) => Ok((*layer, *head)),
                _ => Err(format!("`{name}` has no head value")),
            },
        }
    }

    /// `blocks.L.<suffix>` of this head's layer; a placeholder naming the `let` when the
    /// head is only known at run time (for `qexp plan`).
    pub fn hook(&self, suffix: &str) -> String {
        match self {
            HeadArg::Given { layer, .. } => crate::hooks::block(*layer, suffix),
            HeadArg::Computed(name) => format!("blocks.<layer of {name}>.{suffix}"),
        }
    }
}

/// Feature indices: every feature, or whole numbers given directly, through a `let`, or
/// as lists of those (`[FEATURES, 12]`).
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    All,
    Listed(Value),
}

impl Features {
    /// The whole numbers listed, flattened in order without repeats (`None` for `all`).
    pub fn integers(&self, values: &BTreeMap<String, Value>) -> Option<Vec<i64>> {
        let Features::Listed(value) = self else {
            return None;
        };
        if let Value::Computed(name) = value
            && matches!(values.get(name), Some(Value::All))
        {
            return None;
        }
        let mut out = Vec::new();
        let mut pending = vec![value.clone()];
        while let Some(v) = pending.pop() {
            match v {
                Value::Integer(n) if !out.contains(&n) => out.push(n),
                Value::List(items) => pending.extend(items.into_iter().rev()),
                Value::Computed(name) => pending.extend(values.get(&name).cloned()),
                _ => {}
            }
        }
        Some(out)
    }

    /// The feature indices, all `d_sae` of them for `all`.
    pub fn resolve(&self, values: &BTreeMap<String, Value>, d_sae: usize) -> Vec<usize> {
        match self.integers(values) {
            None => (0..d_sae).collect(),
            Some(listed) => listed.into_iter().map(|f| f as usize).collect(),
        }
    }
}

/// A checked call's arguments, read by name into typed values.
pub struct Args<'c> {
    call: &'c Call,
}

impl<'c> Args<'c> {
    pub fn new(call: &'c Call) -> Self {
        Self { call }
    }

    fn get(&self, name: &str) -> Option<&'c Value> {
        self.call.args.get(name)
    }

    fn error(&self, argument: &str, problem: impl Into<String>) -> BindError {
        BindError {
            function: self.call.function.to_owned(),
            argument: argument.to_owned(),
            problem: problem.into(),
        }
    }

    fn required<T>(&self, name: &str, value: Option<T>) -> Result<T, BindError> {
        value.ok_or_else(|| self.error(name, "is missing or has the wrong type"))
    }

    pub fn opt_text(&self, name: &str) -> Result<Option<Text>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(Text::Given(s.clone()))),
            Some(Value::Computed(n)) => Ok(Some(Text::Computed(n.clone()))),
            Some(other) => Err(self.error(name, format!("is {other}, not text"))),
        }
    }

    pub fn text(&self, name: &str) -> Result<Text, BindError> {
        let text = self.opt_text(name)?;
        self.required(name, text)
    }

    pub fn opt_head(&self, name: &str) -> Result<Option<HeadArg>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Head { layer, head }) => Ok(Some(HeadArg::Given {
                layer: *layer,
                head: *head,
            })),
            Some(Value::Computed(n)) => Ok(Some(HeadArg::Computed(n.clone()))),
            Some(other) => Err(self.error(name, format!("is {other}, not a head"))),
        }
    }

    pub fn head(&self, name: &str) -> Result<HeadArg, BindError> {
        let head = self.opt_head(name)?;
        self.required(name, head)
    }

    /// A name declared earlier: a dataset, SAE, variant or table.
    pub fn opt_name(&self, name: &str) -> Result<Option<String>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Name(n)) => Ok(Some(n.clone())),
            Some(other) => Err(self.error(name, format!("is {other}, not a name"))),
        }
    }

    pub fn name(&self, name: &str) -> Result<String, BindError> {
        let value = self.opt_name(name)?;
        self.required(name, value)
    }

    /// A list of declared names (`variants = [a, b]`); empty when absent.
    pub fn names(&self, name: &str) -> Result<Vec<String>, BindError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::List(items)) => Ok(items.iter().map(ToString::to_string).collect()),
            Some(other) => Err(self.error(name, format!("is {other}, not a list"))),
        }
    }

    pub fn column(&self, name: &str) -> Result<String, BindError> {
        match self.get(name) {
            Some(Value::Column(c)) => Ok(c.clone()),
            _ => Err(self.error(name, "is missing or not a column")),
        }
    }

    pub fn opt_column(&self, name: &str) -> Result<Option<String>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.column(name).map(Some),
        }
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Integer(n)) => Ok(Some(*n)),
            Some(other) => Err(self.error(name, format!("is {other}, not a whole number"))),
        }
    }

    /// Whether the call gives `name`.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A vector: numbers written in the source, or a `let` computed at run time.
    pub fn vector(
        &self,
        name: &str,
    ) -> Result<crate::builtins::interventions::VectorArg, BindError> {
        use crate::builtins::interventions::VectorArg;
        match self.get(name) {
            Some(Value::Computed(n)) => Ok(VectorArg::Computed(n.clone())),
            Some(Value::List(items)) => crate::builtins::interventions::vector_numbers(items)
                .map(VectorArg::Given)
                .map_err(|why| self.error(name, why)),
            _ => Err(self.error(name, "is missing or not a vector")),
        }
    }

    /// A list of whole numbers (`layers = [0, 1]`); `None` when absent.
    pub fn opt_integers(&self, name: &str) -> Result<Option<Vec<i64>>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::List(items)) => items
                .iter()
                .map(|item| match item {
                    Value::Integer(n) => Ok(*n),
                    other => Err(self.error(name, format!("holds {other}, not a whole number"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.error(name, format!("is {other}, not a list"))),
        }
    }

    pub fn opt_number(&self, name: &str) -> Result<Option<f64>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(x)) => Ok(Some(*x)),
            Some(Value::Integer(n)) => Ok(Some(*n as f64)),
            Some(other) => Err(self.error(name, format!("is {other}, not a number"))),
        }
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(name, format!("is {other}, not true or false"))),
        }
    }

    pub fn opt_choice(&self, name: &str) -> Result<Option<String>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Choice(c)) => Ok(Some(c.clone())),
            Some(other) => Err(self.error(name, format!("is {other}, not a choice"))),
        }
    }

    /// A position: an index, negative from the end; `None` when absent or `all`.
    /// Whether the argument is `all` (every position or feature).
    pub fn is_all(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Value::All))
    }

    pub fn position(&self, name: &str) -> Result<Option<i64>, BindError> {
        match self.get(name) {
            None | Some(Value::All) => Ok(None),
            Some(Value::Integer(n)) => Ok(Some(*n)),
            Some(other) => Err(self.error(name, format!("is {other}, not a position"))),
        }
    }

    pub fn hook(&self, name: &str) -> Result<HookRef, BindError> {
        match self.get(name) {
            Some(Value::Hook(hook)) => Ok(hook.clone()),
            _ => Err(self.error(name, "is missing or not a hook")),
        }
    }

    pub fn opt_hook(&self, name: &str) -> Result<Option<HookRef>, BindError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.hook(name).map(Some),
        }
    }

    pub fn features(&self, name: &str) -> Result<Features, BindError> {
        match self.get(name) {
            Some(Value::All) => Ok(Features::All),
            Some(value) => Ok(Features::Listed(value.clone())),
            None => Err(self.error(name, "is missing")),
        }
    }
}

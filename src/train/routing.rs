//! How an inference-free Router model is trained: which route each data column goes through
//! (sentence-transformers' `router_mapping`) and which learning rate each parameter gets
//! (names and the Routers sparq trains: router_layout.rs).

use tch::Tensor;

use super::model::TrainModel;
use super::optim::{map_learning_rates, Param};
use super::static_route::StaticRoute;
use super::TrainError;
use crate::model::InputKind;

impl TrainModel {
    /// Whether this is an inference-free Router model (a static query route).
    pub fn is_inference_free(&self) -> bool {
        self.query.is_some()
    }

    /// The static query route's weight, if this is an inference-free Router model.
    pub fn static_weight(&self) -> Option<&Tensor> {
        self.query.as_ref().map(|q| &q.weight)
    }

    /// Every trainable parameter by sparq's name: the MLM's Hugging Face names, then the
    /// static weight as `<route folder>.weight` unless the route is frozen.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        if let Some(q) = self.query.as_ref().filter(|q| !q.frozen) {
            out.push((self.static_param_name(q), q.weight.shallow_clone()));
        }
        out
    }

    pub(super) fn static_param_name(&self, q: &StaticRoute) -> String {
        format!("{}.weight", q.folder.to_string_lossy())
    }

    /// The names `learning_rate_mapping` patterns are searched in for the parameter `name`:
    /// sentence-transformers' trainer name (`model.0.sub_modules.query.0.weight`), then an
    /// alias by module folder (`query_0_SparseStaticEmbedding.weight`,
    /// `document_0_MLMTransformer.bert.…`), as the upstream docs' `SparseStaticEmbedding\.*`
    /// pattern expects (upstream's own names never contain the class name).
    pub fn mapping_names(&self, name: &str) -> Vec<String> {
        if let Some(q) = &self.query {
            if name == self.static_param_name(q) {
                return vec![self.names.static_name.clone(), name.to_string()];
            }
        }
        let alias = if self.names.mlm_folder.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.names.mlm_folder)
        };
        vec![format!("{}{name}", self.names.mlm_prefix), alias]
    }

    /// The optimizer's parameters with their AdamW state, each at the learning rate
    /// `learning_rate_mapping` gives it (as sentence-transformers' trainer groups them).
    pub fn optimizer_params(&self, mapping: &[(String, f64)]) -> Result<Vec<Param>, TrainError> {
        let mut params: Vec<Param> = self
            .trainable()
            .iter()
            .map(|(name, t)| Param::new(name, t))
            .collect();
        map_learning_rates(&mut params, mapping, |n| self.mapping_names(n)).map_err(|e| {
            let frozen = self.query.as_ref().is_some_and(|q| q.frozen);
            TrainError::Option(if frozen {
                format!(
                    "{e} (the SparseStaticEmbedding is frozen: its config.json says \
                     \"frozen\": true; set it to false to train the static weights)"
                )
            } else {
                e
            })
        })?;
        Ok(params)
    }

    /// Sets the route of each data column (`names` in order) from `mapping` (column → route),
    /// by default the first column the query route and the others the document route.
    pub fn route_columns(
        &mut self,
        names: &[String],
        mapping: &[(String, InputKind)],
    ) -> Result<(), TrainError> {
        for (column, _) in mapping {
            if !names.contains(column) {
                return Err(TrainError::Option(format!(
                    "--router-mapping names column `{column}`, which the training data does not \
                     have (columns: {}): name one of those",
                    names.join(", ")
                )));
            }
        }
        self.column_routes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                mapping
                    .iter()
                    .find(|(c, _)| c == name)
                    .map(|(_, r)| *r)
                    .unwrap_or(if i == 0 {
                        InputKind::Query
                    } else {
                        InputKind::Document
                    })
            })
            .collect();
        if let Some(first) = self.column_routes.get(1) {
            if let Some(i) = (2..names.len()).find(|&i| self.column_routes[i] != *first) {
                return Err(TrainError::Option(format!(
                    "--router-mapping routes column `{}` to the {:?} route but `{}` to the {:?} \
                     route: every column after the anchors shares one forward pass, so they \
                     must take one route",
                    names[1], first, names[i], self.column_routes[i]
                )));
            }
        }
        Ok(())
    }

    /// The route of forward pass `pass` of a training step (0: the anchors, 1: every other
    /// column, which [`TrainModel::route_columns`] keeps on one route).
    pub fn pass_route(&self, pass: usize) -> InputKind {
        self.column_routes
            .get(pass.min(1))
            .copied()
            .unwrap_or(if pass == 0 {
                InputKind::Query
            } else {
                InputKind::Document
            })
    }

    /// The vectors of one batch's columns: the anchors `[b, vocab]` and every other column
    /// concatenated `[(k−1)·b, vocab]`, each column through its route (columns of one route
    /// share a forward pass, as sentence-transformers merges them).
    pub fn forward_columns(&self, columns: &[Vec<&str>]) -> Result<(Tensor, Tensor), TrainError> {
        let route = |c: usize| {
            self.column_routes.get(c).copied().unwrap_or(if c == 0 {
                InputKind::Query
            } else {
                InputKind::Document
            })
        };
        let anchors = self.forward_route(&columns[0], route(0))?;
        let rest = &columns[1..];
        let docs = if (1..columns.len()).all(|c| route(c) == route(1)) {
            let merged: Vec<&str> = rest.iter().flatten().copied().collect();
            self.forward_route(&merged, route(1))?
        } else {
            let parts = (1..columns.len())
                .map(|c| self.forward_route(&columns[c], route(c)))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_cat(&parts, 0)?
        };
        Ok((anchors, docs))
    }

    /// The vectors of `texts` through the route `kind` (the MLM unless it is an
    /// inference-free model's query route).
    pub fn forward_route(&self, texts: &[&str], kind: InputKind) -> Result<Tensor, TrainError> {
        match (&self.query, kind) {
            (Some(q), InputKind::Query) => q.forward(texts),
            _ => self.forward(&self.tokenize(texts)?),
        }
    }
}

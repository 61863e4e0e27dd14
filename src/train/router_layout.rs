//! Which Router models sparq trains, and the names sentence-transformers' trainer gives their
//! parameters (what `learning_rate_mapping` patterns are searched in).

use std::path::Path;

use crate::model::layout::ModelLayout;
use crate::model::router::{NamedRoute, RouteLayout, RouterLayout};
use crate::model::ModelError;

/// How sentence-transformers' trainer names this model's parameters (what
/// `learning_rate_mapping` patterns are searched in), and a shorter alias by module folder.
#[derive(Default)]
pub(super) struct StNames {
    /// Before an MLM parameter's Hugging Face name: `model.0.model.` (plain) or
    /// `model.0.sub_modules.<route>.<i>.model.` (Router).
    pub(super) mlm_prefix: String,
    /// The MLM module folder (`document_0_MLMTransformer`), empty for a plain model.
    pub(super) mlm_folder: String,
    /// The static weight's name: `model.0.sub_modules.<route>.0.weight`.
    pub(super) static_name: String,
}

/// The Router of `dir`, if it is one sparq trains: an inference-free model (static query
/// route) or routes sharing one MLM; two encoders are refused.
pub(super) fn read_router(dir: &Path) -> Result<Option<RouterLayout>, ModelError> {
    let modules = dir.join("modules.json");
    if !modules.is_file() {
        return Ok(None);
    }
    let Some(router) = RouterLayout::read(dir, &modules)? else {
        return Ok(None);
    };
    if let (RouteLayout::Mlm(_), RouteLayout::Mlm(_), false) =
        (&router.query, &router.document, router.shared)
    {
        return Err(ModelError::Unsupported {
            path: router.config,
            what: "training a two-encoder Router model (an MLM on each route)".into(),
            hint: "sparq trains inference-free Router models (a SparseStaticEmbedding query \
                   route) and plain SPLADE models; train two encoders with \
                   SparseEncoderTrainer"
                .into(),
        });
    }
    Ok(Some(router))
}

/// sentence-transformers' names for a Router's parameters: `0.sub_modules.<route>.<i>.…`,
/// under the trainer's `model.` (its loss holds the model).
pub(super) fn router_names(router: &RouterLayout, layout: &ModelLayout) -> StNames {
    let folder = layout
        .transformer_dir
        .strip_prefix(&layout.root)
        .unwrap_or(&layout.transformer_dir)
        .to_string_lossy()
        .into_owned();
    let index = |route: &NamedRoute| route.modules.iter().position(|m| *m == folder);
    StNames {
        mlm_prefix: format!(
            "model.0.sub_modules.{}.{}.model.",
            router.document_route.key,
            index(&router.document_route).unwrap_or(0)
        ),
        mlm_folder: folder.clone(),
        static_name: format!("model.0.sub_modules.{}.0.weight", router.query_route.key),
    }
}

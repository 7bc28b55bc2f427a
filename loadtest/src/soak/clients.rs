//! The thread that runs every WebSocket client of a soak (churn and slow) as tasks on one tokio
//! current-thread runtime. It owns no figures: the tasks write into [`Shared`].

use super::churn::churn_client;
use super::shared::Shared;
use super::slow_clients::slow_client;
use crate::token::TokenClient;
use anyhow::Result;
use std::rc::Rc;
use std::sync::Arc;

pub(super) fn clients_thread(sh: Arc<Shared>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tokens = Rc::new(TokenClient::new(sh.addr, sh.host.clone(), None));
        let mut handles = Vec::new();
        for i in 0..sh.sc.clients {
            handles.push(tokio::task::spawn_local(churn_client(
                sh.clone(),
                i,
                tokens.clone(),
            )));
        }
        for i in 0..sh.p.slow_clients {
            handles.push(tokio::task::spawn_local(slow_client(
                sh.clone(),
                i,
                tokens.clone(),
            )));
        }
        for h in handles {
            let _ = h.await;
        }
    });
    Ok(())
}

-- Orthanc Lua script: forward every mammography series (Modality MG) to calcnode once it is
-- stable (no new instance for "StableAge" seconds). calcnode's results (CAD SR, overlay
-- secondary captures, GSPS) come back into the same study as new series with modalities SR, OT
-- and PR, so they are never forwarded.
--
-- Why series and not OnStableStudy: the results make the study change, so OnStableStudy would
-- fire again after they arrive and send the whole study back to calcnode a second time. A late
-- image added to a mammography series makes that series stable again, so it is re-sent, and
-- calcnode re-analyses the study (images it already has are stored once).

function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] == 'MG' then
      print('calcnode: forwarding mammography series ' .. seriesId)
      SendToModality(seriesId, 'calcnode')
   end
end
